"""`ray job submit --working-dir . -- python ray_jobs/ppo.py --config configs/ppo_tiny.yaml [k=v ...]`

A thin entry point: parse the config, run the PPO actor-learner loop on the cluster the job was
submitted to (rerunning with the same out_dir resumes from its last checkpoint).
"""
import sys

from genrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["ppo", *sys.argv[1:]]))
