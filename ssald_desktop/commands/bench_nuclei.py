"""``ssald-cli bench nuclei``: injection-recovery of second nuclei on real SDSS galaxies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: The quiet SDSS field used by default (2820-3-122 of the shared test data).
DEFAULT_FIELD = Path(__file__).resolve().parents[3] / "shared" / "data" / "sdss" / "frames" / (
    "2820-3-122"
)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _run(args: argparse.Namespace) -> int:
    import os

    from ssald_desktop.commands.bench import write_json
    from ssald_desktop.core.bench_nuclei import bench_nuclei, nuclei_summary
    from ssald_desktop.core.errors import SsaldError

    field = args.field
    if field is None:
        data = os.environ.get("SSALD_TEST_DATA")
        field = (Path(data) / "sdss" / "frames" / "2820-3-122") if data else DEFAULT_FIELD
    if not Path(field).is_dir():
        raise SsaldError(f"{field}: no such field folder (give --field DIR)")

    def show(done: int, total: int) -> None:
        if not args.quiet and (done % 50 == 0 or done == total):
            print(f"  {done}/{total} injections", file=sys.stderr, flush=True)

    r = bench_nuclei(
        field,
        separations=args.separations,
        ratios=args.ratios,
        max_galaxies=args.max_galaxies,
        min_snr=args.min_snr,
        angles=args.angles,
        seed=args.seed,
        progress=show,
        shape_test=not args.no_shape_test,
    )
    print(nuclei_summary(r))
    write_json(r, args.json)
    return 0


def register_bench(bsub: Any) -> None:
    """Add ``bench nuclei``."""
    p = bsub.add_parser(
        "nuclei",
        help="recovery of injected second nuclei vs separation and flux ratio; false pairs",
    )
    p.add_argument("--field", type=Path, help="field folder (default the quiet 2820-3-122)")
    p.add_argument("--separations", type=_floats, default=[0.5, 1.0, 1.5, 2.0, 3.0, 4.0],
                   help="arcsec, comma-separated (default 0.5,1,1.5,2,3,4)")  # fmt: skip
    p.add_argument("--ratios", type=_floats, default=[1.0, 2.0, 5.0, 10.0],
                   help="flux ratios, comma-separated (default 1,2,5,10)")  # fmt: skip
    p.add_argument("--max-galaxies", type=int, help="use at most N galaxies (brightest first)")
    p.add_argument("--min-snr", type=float, default=20.0, help="galaxy detection S/N cut")
    p.add_argument("--angles", type=int, default=1, help="position angles per grid cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-shape-test", action="store_true",
                   help="skip the point-source test of the second nucleus (the plain "
                        "one-vs-two-PSF comparison, for a before/after figure)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    p.set_defaults(func=_run)
