"""Write the seed corpora of the atheris harnesses (tests/fuzz/fuzz_parse.py, fuzz_http.py).

    .venv/bin/python tests/fuzz/seeds.py var/fuzz/seeds

``<out>/parse``: the real Siemens MR of ``tests/data/real-transfer-syntaxes`` in its
nine transfer syntaxes and synthetic CT, PET, MR (RLE, JPEG-LS, JPEG 2000, deflated) and
DX instances from :mod:`qcd.synth`, each both as a Part 10 file and as a C-STORE
(:func:`tests.fuzz.targets.cstore_input`). The real files are cut to fit the harness's
64 kB ``-max_len``: the CSA Series Header cut to its first 16 kB, native pixel data cropped to 32 x 32 (Rows/Columns follow),
encapsulated pixel data reduced to the first 2 kB of its first fragment (the parse path
never decodes pixels). ``<out>/http``: requests for every route, with and without
credentials, STOW-RS uploads of a synthetic instance, and malformed raw requests;
``@SESSION@``, ``@CSRF@``, ``@STUDY@``, ``@SERIES@`` and ``@ALERT@`` are filled in by
the harness.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate, generate_fragments

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from qcd.ingest.filemeta import split_part10  # noqa: E402
from qcd.synth import SeriesSpec, make_study  # noqa: E402
from tests.fuzz.targets import BASIC, cstore_input  # noqa: E402

REAL = ROOT / "tests" / "data" / "real-transfer-syntaxes"
CROP = 32
CSA_KEEP = 16384


def shrink(path: Path) -> bytes:
    """A real file cut below 64 kB with its vendor header intact."""
    ds = pydicom.dcmread(path)
    csa = ds.get((0x0029, 0x1020))  # Siemens CSA Series Header, 74 kB of protocol text
    if csa is not None:
        csa.value = csa.value[:CSA_KEEP]
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_encapsulated:
        first = next(f for f in list(generate_fragments(ds.PixelData))[1:] if f)  # [0]: BOT
        ds.PixelData = encapsulate([first[:2048]])
    else:
        size = ds.BitsAllocated // 8 * ds.get("SamplesPerPixel", 1)
        row = ds.Columns * size
        ds.PixelData = b"".join(ds.PixelData[r * row: r * row + CROP * size]
                                for r in range(CROP))
        ds.Rows = ds.Columns = CROP
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def parse_seeds() -> dict[str, bytes]:
    files = {f"real-{p.stem}": shrink(p) for p in sorted(REAL.glob("*.dcm"))}
    with tempfile.TemporaryDirectory() as tmp:
        specs = [SeriesSpec("CT", 1, "ct", "CHEST"), SeriesSpec("PT", 1, "pet", "WHOLEBODY"),
                 SeriesSpec("MR", 1, "rle", "HEART", compression="rle"),
                 SeriesSpec("PT", 1, "jls", "WHOLEBODY", compression="jpegls"),
                 SeriesSpec("MR", 1, "j2k", "HEART", compression="j2k"),
                 SeriesSpec("MR", 1, "deflate", "HEART", compression="deflate"),
                 SeriesSpec("DX", 1, "dx", "CHEST")]
        for i, path in enumerate(sorted(make_study(tmp, specs, size=32, seed=5))):
            files[f"synth-{i}"] = Path(path).read_bytes()
    out: dict[str, bytes] = {}
    for name, data in files.items():
        assert len(data) < 65536, (name, len(data))
        out[f"{name}.dcm"] = data
        meta, dataset = split_part10(data)
        out[f"{name}.cstore"] = cstore_input(dataset, str(meta.TransferSyntaxUID),
                                             str(meta.MediaStorageSOPClassUID),
                                             str(meta.MediaStorageSOPInstanceUID))
    return out


def http_seeds(dicom: bytes) -> dict[str, bytes]:
    cookie = b"Cookie: qcd_session=@SESSION@\r\n"
    get = [b"/", b"/sites?days=7", b"/sites.csv?from=2026-01-01&to=2026-02-01",
           b"/operator?station=CT01", b"/study/@STUDY@",
           b"/study/@STUDY@/series/@SERIES@/axial/0.png",
           b"/study/@STUDY@/series/@SERIES@/contour/3.png", b"/api/me",
           b"/api/sites?days=30", b"/api/trends?bucket=week&site=A", b"/api/stations",
           b"/api/series?limit=5&station=PT01", b"/api/alerts?state=all&limit=3",
           b"/api/studies/@STUDY@", b"/api/harmonisation?series=1&from=2020-01-01",
           b"/api/harmonisation.csv", b"/harmonisation?site=A&to=2030-01-01",
           b"/api/sites.csv", b"/api/openapi.json", b"/static/qcd.css", b"/metrics",
           b"/healthz", b"/readyz", b"/login?next=/operator"]
    seeds = {f"get-{i}": b"GET " + path + b" HTTP/1.1\r\nHost: qcd\r\n" + cookie + b"\r\n"
             for i, path in enumerate(get)}
    seeds["get-anon"] = b"GET /sites HTTP/1.1\r\nHost: qcd\r\n\r\n"
    seeds["get-basic"] = (b"GET /api/me HTTP/1.1\r\nAuthorization: " + BASIC.encode()
                          + b"\r\n\r\n")
    seeds["head"] = b"HEAD /api/sites HTTP/1.1\r\n" + cookie + b"\r\n"
    seeds["http10"] = b"GET /api/stations HTTP/1.0\r\n" + cookie + b"\r\n"
    seeds["http09"] = b"GET /\r\n"
    seeds["put"] = b"PUT /api/me HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"

    def post(path: bytes, ctype: bytes, body: bytes, extra: bytes = b"") -> bytes:
        return (b"POST " + path + b" HTTP/1.1\r\nHost: qcd\r\n" + cookie + extra
                + b"Content-Type: " + ctype + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    form = b"application/x-www-form-urlencoded"
    seeds["login"] = (b"POST /login HTTP/1.1\r\nCookie: qcd_login=abc\r\nContent-Type: "
                      + form + b"\r\nContent-Length: 70\r\n\r\n"
                      + b"csrf=abc&username=op&password=operator-password&next=/operator"
                      .ljust(70, b"&"))
    seeds["logout"] = post(b"/logout", form, b"csrf=@CSRF@")
    seeds["ack-form"] = post(b"/alerts/@ALERT@/ack", form,
                             b"csrf=@CSRF@&name=fuzz&comment=ok&station=CT01")
    seeds["ack-json"] = post(b"/api/alerts/@ALERT@/ack", b"application/json",
                             b'{"name": "fuzz", "comment": "ok"}', b"X-CSRF-Token: @CSRF@\r\n")
    multipart = (b"--b0und\r\nContent-Type: application/dicom\r\n\r\n" + dicom
                 + b"\r\n--b0und--\r\n")
    stow_type = b'multipart/related; type="application/dicom"; boundary=b0und'
    seeds["stow"] = post(b"/dicom-web/studies", stow_type, multipart,
                         b"X-CSRF-Token: @CSRF@\r\n")
    seeds["stow-study"] = post(b"/dicom-web/studies/@STUDY@", stow_type, multipart,
                               b"X-CSRF-Token: @CSRF@\r\n")
    seeds["stow-basic"] = post(b"/dicom-web/studies", stow_type, multipart,
                               b"Authorization: " + BASIC.encode() + b"\r\n")
    seeds["chunked"] = (b"POST /api/alerts/1/ack HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                        b"\r\n2\r\n{}\r\n0\r\n\r\n")
    seeds["pipelined"] = (b"GET /healthz HTTP/1.1\r\n\r\n"
                          b"GET /api/me HTTP/1.1\r\n" + cookie + b"\r\n")
    for i, raw in enumerate([
            b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
            b"POST /api/alerts/1/ack HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
            b"GET /sites HTTP/1.1\r\nHost: x\r\n" + b"X-H: v\r\n" * 120 + b"\r\n",
            bytes(range(256))]):
        seeds[f"raw-{i}"] = raw
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="writes <out>/parse and <out>/http")
    args = parser.parse_args(argv)
    parse = parse_seeds()
    http = http_seeds(parse["synth-0.dcm"])
    for target, seeds in (("parse", parse), ("http", http)):
        folder = args.out / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{folder}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
