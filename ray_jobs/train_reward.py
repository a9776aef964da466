"""`ray job submit --working-dir . -- python ray_jobs/train_reward.py --config configs/CONFIG.yaml [k=v ...]`

A thin entry point: parse the config, run `genrec train-reward` on the cluster the job was submitted to.
"""
import sys

from genrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-reward", *sys.argv[1:]]))
