-- AlterTable
ALTER TABLE "NlaExplainShare" ADD COLUMN     "featuredDisplayName" TEXT;
