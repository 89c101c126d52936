-- AlterTable
ALTER TABLE "SteerOutput" ADD COLUMN     "capMonitorOutput" TEXT;
