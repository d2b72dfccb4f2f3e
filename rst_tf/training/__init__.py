"""A whole search run, by job: `config` (SearchConfig), `build` (its data and network), `warm_start` (starting from
another run's weights), `loop` (the run itself) and `run_dir` (reading a run folder, writing its files)."""
