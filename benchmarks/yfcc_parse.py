"""YFCC metadata parsing: our streaming source (rows/s) against DuckDB's read_csv of the same TSV."""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote_plus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from stages.base import StageContext  # noqa: E402
from stages.yfcc import YfccMetadata, format_line  # noqa: E402

WORDS = "sunset harbour boat dog park city street night river bridge old church market beach tree snow".split()


def write_tsv(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            title = " ".join(rng.choices(WORDS, k=rng.randint(1, 5))) if rng.random() < 0.7 else f"IMG_{rng.randint(1000, 9999)}"
            desc = quote_plus("<b>" + " ".join(rng.choices(WORDS, k=rng.randint(0, 25))) + "</b>") if rng.random() < 0.5 else ""
            fields = {"line": i, "id": 1000000 + i, "user": "12345678@N00", "date_taken": "2010-07-04+12%3A00%3A00.0",
                      "title": quote_plus(title), "description": desc, "tags": ",".join(rng.choices(WORDS, k=3)),
                      "url": f"http://farm{rng.randint(1, 9)}.staticflickr.com/{i}/{i}_abc.jpg",
                      "license": "Attribution+License", "license_url": "http%3A%2F%2Fcreativecommons.org%2Flicenses%2Fby%2F2.0%2F",
                      "marker": "1" if rng.random() < 0.01 else "0"}
            fh.write(format_line(fields, 25))


def ours(path: Path) -> float:
    ctx = StageContext(build_id="bench", seed=0, recipe_dir=path.parent, source="yfcc", task="understanding")
    src = YfccMetadata(YfccMetadata.Config(kind="yfcc_metadata", paths=[str(path)]), ctx)
    t0 = time.perf_counter()
    n = sum(t.num_rows for t in src.read(path))
    return n / (time.perf_counter() - t0)


def baseline(path: Path) -> float:
    con = duckdb.connect()
    t0 = time.perf_counter()
    table = con.sql(f"select * from read_csv('{path}', delim='\t', header=false, quote='', escape='', all_varchar=true)").arrow()
    n = table.num_rows if hasattr(table, "num_rows") else table.read_all().num_rows
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", action="store_true", help="100k rows")
    args = parser.parse_args()
    rows = 100_000 if args.small else args.rows
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "yfcc100m_dataset.tsv"
        write_tsv(path, rows)
        # best of two runs each, interleaved: the first pays imports and a cold page cache
        b, o = baseline(path), ours(path)
        b, o = max(b, baseline(path)), max(o, ours(path))
    print(f"{rows} rows: ours {o:,.0f} rows/s, duckdb read_csv {b:,.0f} rows/s, ratio {o / b:.3f}")
    print(json.dumps({"benchmark": "yfcc_parse", "ours": round(o, 1), "baseline": round(b, 1), "unit": "rows/s", "ratio": round(o / b, 4)}))


if __name__ == "__main__":
    main()
