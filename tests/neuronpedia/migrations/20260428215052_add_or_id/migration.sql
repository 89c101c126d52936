-- AlterTable
ALTER TABLE "Model" ADD COLUMN     "openRouterId" TEXT;
