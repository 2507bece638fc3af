"""An upload read as it arrives: counted chunk by chunk and refused at the limit whatever the headers say.

The body is pulled from the ASGI stream (``request.stream()``) and fed to python-multipart's streaming parser; the
file part is kept in memory up to the limit and never spooled to disk, so nothing beyond the limit is received into
the process or written anywhere. A declared ``Content-Length`` above the limit is refused before a byte is read; a
chunked body (no length) is refused at the first chunk that crosses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

#: Room for the multipart envelope (boundaries, part headers, small fields) on top of the file's limit.
ENVELOPE = 64 * 1024
#: The longest form field other than the file (``k``, ``where=label=benign``).
FIELD_BYTES = 1024
MAX_FIELDS = 32


@dataclass
class Upload:
    """The form of one query: the file's name and bytes, and the other fields (repeated names kept in order)."""

    filename: str
    data: bytes
    fields: dict[str, list[str]] = field(default_factory=dict)


def too_large(limit_mb: float) -> HTTPException:
    return HTTPException(413, f"the upload is too large: this server takes files up to {limit_mb:g} MB")


class _Collector:
    """python-multipart callbacks: one part at a time into memory, each part bounded as it grows."""

    def __init__(self, limit: int, limit_mb: float):
        self.limit, self.limit_mb = limit, limit_mb
        self.upload: Upload | None = None
        self.fields: dict[str, list[str]] = {}
        self.n_fields = 0
        self._header, self._value = bytearray(), bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str = ""
        self._filename: str | None = None
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._header.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _begin(self) -> None:
        self._headers, self._data = {}, bytearray()
        self._name, self._filename = "", None

    def _header_end(self) -> None:
        self._headers[bytes(self._header).lower()] = bytes(self._value)
        self._header, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")
        if self._filename is None:
            self.n_fields += 1
            if self.n_fields > MAX_FIELDS:
                raise HTTPException(400, f"the form has more than {MAX_FIELDS} fields")
        elif self._name != "file" or self.upload is not None:
            raise HTTPException(400, "send exactly one file, in the form field `file`")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.extend(data[start:end])
        if self._filename is not None and len(self._data) > self.limit:
            raise too_large(self.limit_mb)
        if self._filename is None and len(self._data) > FIELD_BYTES:
            raise HTTPException(400, f"the form field {self._name!r} is longer than {FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._filename is not None:
            self.upload = Upload(self._filename, bytes(self._data))
        else:
            self.fields.setdefault(self._name, []).append(self._data.decode("utf-8", "replace"))
        self._data = bytearray()


def declared_too_large(request: Request, limit: int) -> bool:
    """A body whose declared length alone exceeds the limit (refused before anything is read)."""
    declared = request.headers.get("content-length", "")
    return declared.isdigit() and int(declared) > limit + ENVELOPE


async def _fields_only(request: Request) -> Upload:
    """A URL-encoded form (``curl -d text=…``): fields only, read up to the envelope's size."""
    from urllib.parse import parse_qsl

    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > ENVELOPE:
                raise HTTPException(413, f"a form without a file is at most {ENVELOPE // 1024} KB")
    except ClientDisconnect:
        raise HTTPException(400, "the upload was cut off before its end") from None
    try:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:
        raise HTTPException(400, f"the form has more than {MAX_FIELDS} fields") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        if len(value.encode()) > FIELD_BYTES:
            raise HTTPException(400, f"the form field {name[:40]!r} is longer than {FIELD_BYTES} bytes")
        fields.setdefault(name, []).append(value)
    return Upload("", b"", fields)


async def read_upload(request: Request, limit_mb: float, *, file_optional: bool = False) -> Upload:
    """The query form of ``request``, read chunk by chunk; 413 at the limit, 400 for anything but one file.

    ``file_optional``: a form of fields only is an :class:`Upload` without a file (a query by words).
    """
    limit = int(limit_mb * 1024 * 1024)
    if declared_too_large(request, limit):
        raise too_large(limit_mb)
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind == b"application/x-www-form-urlencoded" and file_optional:
        return await _fields_only(request)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise HTTPException(400, "send the image as multipart/form-data, in the form field `file`")
    collector = _Collector(limit, limit_mb)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + ENVELOPE:  # whatever the headers said: the bytes themselves count
                raise too_large(limit_mb)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError:
        raise HTTPException(400, "the upload is not a well-formed multipart form") from None
    except ClientDisconnect:
        raise HTTPException(400, "the upload was cut off before its end") from None
    if collector.upload is None:
        if not file_optional:
            raise HTTPException(400, "no file: send the image in the form field `file`")
        collector.upload = Upload("", b"")
    collector.upload.fields = collector.fields
    return collector.upload
