"""`ray job submit --working-dir . -- python ray_jobs/evaluate_jobs.py --config configs/CONFIG.yaml [k=v ...]`

A thin entry point: parse the config, run `genrec evaluate-jobs` on the cluster the job was submitted to.
"""
import sys

from genrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate-jobs", *sys.argv[1:]]))
