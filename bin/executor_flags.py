"""Where an app's runs execute (defined on import), shared by bin/sweep and bin/reproduce: --executor=local runs
them one after another in this process, --executor=ray as Ray tasks on this machine or a cluster."""
from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_enum("executor", "local", ["local", "ray"], "Where the runs execute: local (one after another, here) "
                  "or ray (each run a Ray task in a worker process of its own; see --ray_address).")
flags.DEFINE_string("ray_address", "", "--executor=ray: empty starts Ray on this machine; auto joins the cluster "
                    "this machine belongs to (`ray start`), HOST:PORT the cluster whose head is there, "
                    "ray://HOST:PORT through Ray Client. Every node must see --output_dir (a shared file system).")
flags.DEFINE_float("cpus_per_run", 1.0, "--executor=ray: CPUs one run asks for.", lower_bound=0.0)
flags.DEFINE_float("gpus_per_run", 0.0, "--executor=ray: GPUs one run asks for (fractions share a GPU).",
                   lower_bound=0.0)
flags.DEFINE_integer("max_concurrent_runs", 0, "--executor=ray: at most this many runs at once; 0: as many as the "
                     "cluster's resources hold.", lower_bound=0)


def executor_from_flags():
    """The executor the flags ask for (ValueError, one line, for a malformed --ray_address)."""
    from rst_tf.study import executors

    if FLAGS.executor == "local":
        return executors.LocalExecutor()
    from rst_tf.study import ray_executor

    try:
        return ray_executor.RayExecutor(FLAGS.ray_address, FLAGS.cpus_per_run, FLAGS.gpus_per_run,
                                        FLAGS.max_concurrent_runs)
    except ValueError as error:
        raise ValueError(f"--{error}") from None
