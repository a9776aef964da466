"""`ray job submit --working-dir . -- python ray_jobs/serve.py --config configs/serve.yaml [k=v ...]`

Deploys the app on the cluster the job runs on. With blocking=true (the default) the job keeps
running until it is stopped (`ray job stop`), which also shuts Serve down; with blocking=false the
job deploys and ends, and the app stays up until `serve shutdown`.
"""
import sys

from genrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
