"""Every stage in order into one run directory, as one Ray job (see genrec/pipeline.py):

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"excludes": [".venv", "runs", "bench/work", ".git"]}' \\
        -- python ray_jobs/pipeline.py --config configs/pipeline_demo.yaml out_dir=/shared/runs/demo
"""
import sys

from genrec.pipeline import PipelineConfig, load_pipeline, main, plan, run_pipeline  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
