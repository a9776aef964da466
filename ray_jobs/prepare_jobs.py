"""`ray job submit --working-dir . -- python ray_jobs/prepare_jobs.py --config configs/CONFIG.yaml [k=v ...]`

A thin entry point: parse the config, run `genrec prepare-jobs` on the cluster the job was submitted to.
"""
import sys

from genrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-jobs", *sys.argv[1:]]))
