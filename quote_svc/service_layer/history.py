"""`stockmesh candles import FILE.csv`: every row is checked before anything is written, then
the whole file goes in one transaction, so a file is imported entirely or not at all.
Importing the same file again changes nothing (rows are keyed by symbol, width and start,
and identical rows are not rewritten)."""
from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meshkit import symbols
from quote_svc.domain.history import ImportedCandle, MalformedRow, parse
from quote_svc.service_layer.unit_of_work import QuoteUnitOfWork

CHUNK = 2000


@dataclass(frozen=True)
class ImportReport:
    rows: int
    inserted: int
    updated: int

    @property
    def unchanged(self) -> int:
        return self.rows - self.inserted - self.updated


def read_file(path: Path) -> list[ImportedCandle]:
    """Every row of the file, checked; raises MalformedRow naming the first bad line."""
    data = path.read_bytes()
    data = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The line of the first byte that is not UTF-8 (a binary file: usually line 1).
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise MalformedRow(line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
                                 "is it a CSV file?") from None
    lines = _Lines(text)
    reader = csv.DictReader(lines)
    try:
        header = reader.fieldnames
        return list(parse(list(header or []), lines.records(reader), set(symbols.listed())))
    except csv.Error as exc:
        raise MalformedRow(reader.line_num, f"not valid CSV: {exc}") from None


class _Lines:
    """A file's lines as the CSV reader takes them, remembering where each record began: a
    record with a quoted line break spans lines, and its mistakes are named by its first
    (round 16: by its last, the reader's line_num)."""

    def __init__(self, text: str) -> None:
        self._lines = io.StringIO(text, newline="")
        self.count, self.first = 0, 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.count += 1
        if not self.first and line.strip("\r\n"):
            self.first = self.count
        return line

    def records(self, reader: csv.DictReader):
        """(first line, row) of each record `reader` reads from these lines."""
        self.first = 0  # the header's
        for row in reader:
            yield self.first, row
            self.first = 0


async def import_candles(candles: list[ImportedCandle], uow_factory: Callable[[], QuoteUnitOfWork],
                         progress: Callable[[int], None] | None = None) -> ImportReport:
    inserted = updated = 0
    async with uow_factory() as uow:
        for i in range(0, len(candles), CHUNK):
            chunk = candles[i:i + CHUNK]
            ins, upd = await uow.candles.upsert_imported(chunk)
            inserted, updated = inserted + ins, updated + upd
            if progress:
                progress(len(chunk))
        await uow.commit()
    return ImportReport(len(candles), inserted, updated)
