"""`ray job submit --working-dir . -- python ray_jobs/tune.py --config configs/tune_sft.yaml [k=v ...]`

A thin entry point: parse the config, run the Tune sweep on the cluster the job was submitted to
(trials run as many at once as the cluster's CPUs or GPUs hold). Give out_dir as an absolute path
on storage every node shares.
"""
import sys

from genrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
