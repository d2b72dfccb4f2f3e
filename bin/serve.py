"""Serve every model of an export folder over HTTP with TensorFlow Serving's REST predict protocol (KServe).

    bin/serve --model_dir=export/ --port=8501

Each `<name>/<version>/` SavedModel that bin/export wrote (single tickets and R2S models) is served, its highest
version, as `POST /v1/models/<name>:predict` with {"instances": [...]} or {"inputs": [...]} and an optional
"signature_name" (serving_default: float32 images in [0, 1]; serving_uint8: integers in 0..255). Readiness:
`GET /v1/models/<name>` and `/v2/health/ready`; liveness: `GET /` and `/v2/health/live`. A malformed request gets
HTTP 400 and one line saying what is wrong.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bin import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "An export folder (bin/export's --output_dir): NAME/VERSION/saved_model.pb.")
flags.DEFINE_integer("port", 8501, "HTTP port.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
flags.DEFINE_integer("threads", 4, "Requests each model runs at once.")


def main(argv):
    common.reject_extra_arguments(argv)
    common.require_flags("model_dir")
    if not os.path.isdir(FLAGS.model_dir):
        common.fail(f"--model_dir {FLAGS.model_dir} is not a folder")
    if not 0 < FLAGS.port < 65536:
        common.fail(f"--port {FLAGS.port} is not a TCP port (1..65535)")
    if FLAGS.threads < 1:
        common.fail(f"--threads {FLAGS.threads} must be at least 1")
    from rst_tf.deployment import serving

    with common.clear_errors():
        models = serving.load_models(FLAGS.model_dir, FLAGS.threads)
    for name, model in models.items():
        print(f"serving {name} from {model.path}", flush=True)
    print(f"listening on http://{FLAGS.host}:{FLAGS.port}", flush=True)
    serving.serve(models, FLAGS.port, FLAGS.host)


if __name__ == "__main__":
    common.run(main)
