"""`ray job submit --working-dir . -- python ray_jobs/sft.py --config configs/sft_tiny.yaml [k=v ...]`

A thin entry point: parse the config, run SFT on the cluster the job was submitted to.
"""
import sys

from genrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-sft", *sys.argv[1:]]))
