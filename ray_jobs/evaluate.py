"""`ray job submit --working-dir . -- python ray_jobs/evaluate.py --config configs/evaluate.yaml [k=v ...]`"""
import sys

from genrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
