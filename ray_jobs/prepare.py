"""`ray job submit --working-dir . -- python ray_jobs/prepare.py --config configs/prepare_toys.yaml [k=v ...]`

A thin entry point: parse the config, run the stage on the cluster the job was submitted to.
"""
import sys

from genrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
