"""Peak memory of the preprocess job over a generated heat-source CSV of a given size.

    .venv/bin/python benchmarks/preprocess_memory.py --megabytes 200 --json /tmp/preprocess_memory.json

The job runs in a child process (so its peak resident set is its own) against an S3 stand-in that keeps every object
in a file on local disk, so the stand-in holds none of the input, output or checkpoints in memory. The job
checkpoints after every quarter of the rows, the last time with nearly all of its output written: the peak includes
what a Spot notice near the end costs. Reported: the child's peak resident set (ru_maxrss) and, in a second child,
the peak of Python's own allocations (tracemalloc), each against the input's size.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench"
INPUT_KEY = "incoming/sources.csv"
MIB = 1 << 20


def write_input(path: Path, megabytes: float, seed: int = 7) -> int:
    """A CSV of about ``megabytes`` MiB shaped like an ingest upload (a few rows preprocess rejects); returns rows."""
    rng = random.Random(seed)
    target, rows, written = megabytes * MIB, 0, 0
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("source_id,x_m,y_m,power_w,note\n")
        while written < target:
            line = f"src-{rows:08d},{rng.random():.5f},{rng.random():.5f},{rng.uniform(0.001, 0.01):.6f},\n"
            if rows % 97 == 0:
                line = line.replace(",0.", ",1.", 1)  # off the plate
            written += out.write(line)
            rows += 1
    return rows


class DiskS3:
    """The S3 calls the job makes, on files under ``root`` (``<root>/<bucket>/<key>``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    @staticmethod
    def _error(code: str, operation: str) -> Exception:
        from botocore.exceptions import ClientError

        return ClientError({"Error": {"Code": code, "Message": code}}, operation)

    def get_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        path = self._path(Bucket, Key)
        if not path.is_file():
            raise self._error("NoSuchKey", "GetObject")
        return {"Body": path.open("rb"), "ContentLength": path.stat().st_size}

    def put_object(self, Bucket: str, Key: str, Body: Any, IfNoneMatch: str | None = None, **_: Any) -> dict[str, Any]:
        path = self._path(Bucket, Key)
        if IfNoneMatch == "*" and path.exists():
            raise self._error("PreconditionFailed", "PutObject")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            if isinstance(Body, bytes | bytearray):
                out.write(Body)
            else:
                while block := Body.read(MIB):
                    out.write(block)
        return {}

    def list_objects_v2(self, Bucket: str, Prefix: str = "", **_: Any) -> dict[str, Any]:
        base = self.root / Bucket
        keys = sorted(str(path.relative_to(base)) for path in base.rglob("*") if path.is_file())
        return {"Contents": [{"Key": key} for key in keys if key.startswith(Prefix)], "IsTruncated": False}

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        for entry in Delete["Objects"]:
            self._path(Bucket, entry["Key"]).unlink(missing_ok=True)
        return {}


def child(root: Path, rows: int, trace: bool) -> dict[str, Any]:
    """Run preprocess once on the stand-in (in this process) and measure it."""
    import resource
    import tracemalloc

    # The workload and the runtime of this checkout, not whichever the environment has installed.
    sys.path[:0] = [str(REPO / "jobs" / "preprocess"), str(REPO / "jobs" / "runtime")]
    import preprocess

    env = {
        "INPUT_URI": f"s3://{BUCKET}/{INPUT_KEY}",
        "OUTPUT_URI": f"s3://{BUCKET}/runs/bench/preprocess/",
        "CHECKPOINT_URI": f"s3://{BUCKET}/checkpoints/bench/preprocess/",
        "AWS_EC2_METADATA_DISABLED": "true",
        "SPOT_CHECKPOINT_INTERVAL_SECONDS": "0",
        "PREPROCESS_CHUNK_ROWS": str(-(-rows // 4)),
    }
    if trace:
        tracemalloc.start()
    preprocess.run(DiskS3(root), env)
    result: dict[str, Any] = {"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if trace:
        result["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / MIB
    return result


def measure(root: Path, rows: int, trace: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(root), "--rows", str(rows)] + (["--trace"] if trace else [])
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200.0, help="input size in MiB (200)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.trace)))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        source = root / BUCKET / INPUT_KEY
        source.parent.mkdir(parents=True)
        rows = write_input(source, args.megabytes)
        input_mib = source.stat().st_size / MIB
        result = {"input_mib": round(input_mib, 1), "rows": rows}
        for trace in (False, True):
            result.update({name: round(value, 1) for name, value in measure(root, rows, trace).items()})
    print(
        f"input {result['input_mib']} MiB ({rows} rows): peak RSS {result['max_rss_mib']} MiB "
        f"({result['max_rss_mib'] / input_mib:.2f}x), Python allocations {result['tracemalloc_peak_mib']} MiB "
        f"({result['tracemalloc_peak_mib'] / input_mib:.2f}x)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
