-- AlterEnum
ALTER TYPE "ProblemNodeType" ADD VALUE 'model';
