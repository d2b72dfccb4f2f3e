"""Sizes of a six-ticket ResNet18 bank (.rst, R2S SavedModel) against one dense fp32 model, and serving latency of
the R2S SavedModel against a single-ticket SavedModel: in process, and through bin/serve over HTTP.

    python bench/serving.py [--width 1.0] [--batch 1] [--calls 50] [--repeats 7] [--clients 1,4,16]

Tickets at the paper's remaining ratios 5, 7, 10, 15, 20 and 30% over one random ResNet18 (seed 0). Their masks
are the top-k of freshly drawn scores (a search moves scores but keeps the count; the code size depends on the
kept fraction, not on where the kept weights lie), with BatchNorm statistics calibrated on random images. Both
SavedModels are loaded with TensorFlow alone and called through `serving_default`; a round times `--calls` calls
of each, interleaved. Then bin/serve serves both from an export folder, and for each number of concurrent clients
(each sending `--http_requests` requests, one after another, over one connection) the rounds alternate between
the two models: throughput (requests per second) and p50/p99 latency per model. Results: docs/serving.json.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from rst_tf import networks  # noqa: E402
from rst_tf.deployment import artifact, export, mask_codec, r2s  # noqa: E402
from rst_tf.method import layers  # noqa: E402
from rst_tf.method.ticket import ticket_of  # noqa: E402

RATIOS = r2s.DEFAULT_REMAINING_RATIOS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ticket(width, ratio, index):
    network = networks.build("resnet18", num_classes=10, input_shape=(32, 32, 3), dataset="cifar10",
                             remaining_ratio=ratio, seed=0, width_multiplier=width)
    rng = np.random.default_rng(index)
    for layer in layers.masked_layers(network):
        layer.scores.assign(rng.standard_normal(layer.scores.shape).astype(np.float32))
    norms = layers.batch_norm_layers(network)
    for layer in norms:
        layer.momentum = 0.0
    network(tf.random.stateless_uniform([64, 32, 32, 3], [index, 0]), training=True)
    return network, ticket_of(network, f"ratio_{ratio:g}")


class Server:
    """bin/serve on a free local port, serving every model of `export_dir`; stopped on exit."""

    def __init__(self, export_dir, log_path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._log = open(log_path, "w")
        self._process = subprocess.Popen([os.path.join(ROOT, "bin", "serve"), f"--model_dir={export_dir}",
                                          f"--port={self.port}"], stdout=self._log, stderr=subprocess.STDOUT)

    def __enter__(self):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/v2/health/ready")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"bin/serve did not start; see {self._log.name}")

    def __exit__(self, *_):
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._log.close()


def client(port, model, body, requests):
    """Latencies (seconds) of `requests` predict calls, one after another over one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    latencies = []
    for _ in range(requests):
        began = time.perf_counter()
        connection.request("POST", f"/v1/models/{model}:predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        reply = response.read()
        if response.status != 200:
            raise RuntimeError(f"{model}: HTTP {response.status} {reply[:200]!r}")
        latencies.append(time.perf_counter() - began)
    connection.close()
    return latencies


def http_load(port, models, body, clients, requests, repeats):
    """Per number of clients and model: median throughput over rounds, p50 / p99 latency over every request."""
    report = {}
    for count in clients:
        rates, latencies = {model: [] for model in models}, {model: [] for model in models}
        client(port, models[0], body, 2), client(port, models[1], body, 2)  # warm up
        for _ in range(repeats):
            for model in models:
                with concurrent.futures.ThreadPoolExecutor(count) as pool:
                    began = time.perf_counter()
                    parts = list(pool.map(lambda _: client(port, model, body, requests), range(count)))
                    seconds = time.perf_counter() - began
                rates[model].append(count * requests / seconds)
                latencies[model].extend(value for part in parts for value in part)
        report[str(count)] = {model: {"requests_per_second": statistics.median(rates[model]),
                                      "p50_ms": 1e3 * float(np.percentile(latencies[model], 50)),
                                      "p99_ms": 1e3 * float(np.percentile(latencies[model], 99)),
                                      "rounds_requests_per_second": rates[model], "requests": len(latencies[model])}
                              for model in models}
        single, switching = (report[str(count)][model] for model in models)
        report[str(count)]["r2s_vs_single"] = {"throughput": switching["requests_per_second"] /
                                               single["requests_per_second"],
                                               "p50": switching["p50_ms"] / single["p50_ms"],
                                               "p99": switching["p99_ms"] / single["p99_ms"]}
        print(f"{count:>2} clients: single {single['requests_per_second']:.1f}/s p50 {single['p50_ms']:.1f} ms "
              f"p99 {single['p99_ms']:.1f} ms; R2S {switching['requests_per_second']:.1f}/s p50 "
              f"{switching['p50_ms']:.1f} ms p99 {switching['p99_ms']:.1f} ms", flush=True)
    return report


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clients", default="1,4,16", help="Numbers of concurrent HTTP clients.")
    parser.add_argument("--http_requests", type=int, default=16, help="Requests per client per round.")
    parser.add_argument("--http_repeats", type=int, default=5, help="Rounds per model and number of clients.")
    args = parser.parse_args()
    machine = common.machine()  # the peak is measured before the models load

    built = [ticket(args.width, ratio, index) for index, ratio in enumerate(RATIOS)]
    network = built[0][0]
    bank = r2s.MaskBank(network, [found for _, found in built])
    spec = artifact.network_spec(dict(network="resnet18", dataset="cifar10", remaining_ratio=RATIOS[0],
                                      sparsity="element", weight_init="signed_kaiming_constant", seed=0,
                                      scale_fan=False, width_multiplier=args.width, dense_first_conv=False,
                                      dense_classifier=False), 10, (32, 32, 3))
    weights = sum(int(np.prod(layer.kernel.shape)) for layer in layers.masked_layers(network))
    with tempfile.TemporaryDirectory() as folder:
        bank_path = os.path.join(folder, "bank.rst")
        artifact.write(bank_path, {"default": spec}, bank.tickets, {"default": network})
        single_path = export.save(os.path.join(folder, "export", "cifar10_ratio_0_05", "1"),
                                  {"cifar10": r2s.MaskBank(network, bank.tickets[:1])})
        r2s_path = export.save(os.path.join(folder, "export", "cifar10_r2s", "1"), {"cifar10": bank})
        sizes = {"rst_file": os.path.getsize(bank_path), "single_ticket_saved_model": folder_bytes(single_path),
                 "r2s_saved_model": folder_bytes(r2s_path), "dense_fp32_weights": 4 * weights,
                 "masks_bit_packed": sum((mask.size + 7) // 8 for t in bank.tickets for mask in t.masks.values()),
                 "masks_coded": sum(mask_codec.encode(mask).num_bytes for t in bank.tickets
                                    for mask in t.masks.values()),
                 "batch_norm_statistics": sum(mean.nbytes + variance.nbytes for t in bank.tickets
                                              for mean, variance in t.statistics.values())}
        images = tf.random.stateless_uniform([args.batch, 32, 32, 3], [1, 2])
        single = tf.saved_model.load(single_path).signatures["serving_default"]
        switching = tf.saved_model.load(r2s_path).signatures["serving_default"]

        def calls(serve):
            def run():
                for _ in range(args.calls):
                    serve(images=images)["logits"].numpy()
            return run

        medians, times = common.interleaved_medians({"single": calls(single), "r2s": calls(switching)}, args.repeats)
        del single, switching
        body = json.dumps({"instances": images.numpy().tolist()}).encode()
        with Server(os.path.join(folder, "export"), os.path.join(folder, "serve.log")) as server:
            served = http_load(server.port, ["cifar10_ratio_0_05", "cifar10_r2s"], body,
                               [int(count) for count in args.clients.split(",")], args.http_requests,
                               args.http_repeats)
    per_call = {name: value / args.calls for name, value in medians.items()}
    results = {"machine": machine, "width_multiplier": args.width, "batch": args.batch,
               "calls_per_round": args.calls, "repeats": args.repeats, "remaining_ratios": list(RATIOS),
               "masked_weights": weights, "bytes": sizes,
               "rst_vs_dense_fp32": sizes["rst_file"] / sizes["dense_fp32_weights"],
               "seconds_per_call": per_call, "r2s_vs_single": per_call["r2s"] / per_call["single"],
               "r2s_vs_single_median_of_rounds": statistics.median(
                   r / s for r, s in zip(times["r2s"], times["single"])),
               "r2s_vs_single_fastest_rounds": min(times["r2s"]) / min(times["single"]),
               "round_seconds": times,
               "http": {"server": "bin/serve (KServe ModelServer, TF Serving REST predict)", "batch": args.batch,
                        "requests_per_client_per_round": args.http_requests, "rounds": args.http_repeats,
                        "by_clients": served}}
    path = common.write_results("serving", results)
    print(f".rst bank of {len(RATIOS)} tickets: {sizes['rst_file'] / 1e6:.2f} MB; dense fp32 weights "
          f"{sizes['dense_fp32_weights'] / 1e6:.2f} MB; single-ticket SavedModel "
          f"{sizes['single_ticket_saved_model'] / 1e6:.2f} MB; R2S SavedModel {sizes['r2s_saved_model'] / 1e6:.2f} MB")
    print(f"batch {args.batch}: single {1e3 * per_call['single']:.2f} ms, R2S {1e3 * per_call['r2s']:.2f} ms per call "
          f"(x{results['r2s_vs_single']:.2f}); {path}")


if __name__ == "__main__":
    main()
