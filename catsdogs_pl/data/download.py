"""Download the Microsoft Kaggle Cats-vs-Dogs archive, resumably and verified.

The archive is ~790 MB from one server and connections drop, so bytes go to a
``.part`` file that a re-run continues with an HTTP Range request; the file only
gets its final name once its size and SHA-256 match.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from catsdogs_pl.errors import CatsDogsError

KAGGLE_URL = (
    "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
    "kagglecatsanddogs_5340.zip"
)
KAGGLE_FILENAME = "kagglecatsanddogs_5340.zip"
# From huggingface/datasets datasets/cats_vs_dogs/dataset_infos.json ("download_checksums");
# the size matches wget logs of this URL, the hash matches gomlx/gomlx examples/dogsvscats.
KAGGLE_SIZE: int | None = 824_887_076
KAGGLE_SHA256: str | None = "b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9"


class DownloadError(CatsDogsError, RuntimeError):
    """A download failed or gave wrong bytes; the message says which file and what to do."""


def sha256sum(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hash in chunks so that a large archive never sits in memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected_size: int | None = None, sha256: str | None = None) -> None:
    """Raise DownloadError if ``path`` has the wrong size or SHA-256; None skips that check."""
    size = Path(path).stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(f"{path}: size mismatch: expected {expected_size} bytes, got {size}")
    if sha256 is not None and (actual := sha256sum(path)) != sha256.lower():
        raise DownloadError(f"{path}: sha256 mismatch: expected {sha256}, got {actual}")


def _fetch(
    url: str, part: Path, chunk_size: int, timeout: float, bar_total: int | None
) -> int | None:
    """Append the missing bytes to ``part``; return the total size the server announced."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if resp.status == 206:
                crange = resp.headers.get("Content-Range", "")
                m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", crange.strip())
                if not m or int(m[1]) != offset:
                    raise DownloadError(f"{url}: bad Content-Range {crange!r} for byte {offset}")
                total = int(m[2]) if m[2] != "*" else None
            else:  # 200: the server ignored Range, so start again from zero
                offset = 0
                total = int(length) if length else None
            with (
                part.open("ab" if offset else "wb") as f,
                tqdm(
                    total=bar_total if bar_total is not None else total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    desc=part.name,
                ) as bar,
            ):
                while chunk := resp.read(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
            return total
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left after offset: .part is already complete
            return None
        raise DownloadError(f"downloading {url} failed: {e}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(
            f"downloading {url} failed: {e}; re-run to resume from {part} "
            f"({part.stat().st_size if part.exists() else 0} bytes so far)"
        ) from e


def download(
    url: str = KAGGLE_URL,
    dest: Path = Path("data"),
    *,
    expected_size: int | None = KAGGLE_SIZE,
    sha256: str | None = KAGGLE_SHA256,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
) -> Path:
    """Download ``url`` into ``dest``, resuming a previous ``.part``, and return the verified file.

    An existing file that verifies is returned without touching the network.
    """
    final = Path(dest) / Path(urllib.parse.urlsplit(url).path).name
    part = final.with_name(final.name + ".part")
    if final.exists():
        try:
            verify(final, expected_size, sha256)
            tqdm.write(f"{final} already downloaded")
            return final
        except DownloadError as e:
            tqdm.write(f"{e}; downloading it again")
            final.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)

    total = _fetch(url, part, chunk_size, timeout, expected_size)
    size = expected_size if expected_size is not None else total
    if size is not None and part.stat().st_size < size:  # connection dropped early
        raise DownloadError(
            f"{part}: size mismatch: expected {size} bytes, got {part.stat().st_size}; "
            "re-run to resume"
        )
    try:
        verify(part, size, sha256)
    except DownloadError as e:  # too long or wrong hash: the bytes themselves are bad
        part.unlink()
        raise DownloadError(f"{e}; deleted it, re-run to download again") from e
    part.replace(final)
    return final
