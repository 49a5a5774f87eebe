"""Checking a shard as stored: its size, SHA-256, TFRecord framing and CRCs, and how many records it holds.

`scan_shard` reads a shard once, streaming: it hashes the stored bytes and,
through gzip when the shard is compressed, walks every record's length, length
CRC and data CRC. The pipeline scans each shard it writes before publishing it,
and `python -m beam_jobs.verify` scans a published dataset against its manifest.
"""
import dataclasses
import hashlib
import struct
import zlib

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

READ_CHUNK_BYTES = 1 << 20
_HEADER_BYTES = 12  # the record's length (8 bytes, little-endian) and the masked CRC-32C of those 8 bytes
_FOOTER_BYTES = 4  # the masked CRC-32C of the data


@dataclasses.dataclass(frozen=True)
class ShardScan:
    num_records: int  # the records whose framing and CRCs are intact, before `problem` if there is one
    num_bytes: int  # the stored (compressed, for gzip) size
    sha256: str  # hex SHA-256 of the stored bytes
    problem: str | None  # why the framing is broken, or None


class _FramingWalker:
    """Fed the uncompressed bytes of a shard in pieces, counts its records and finds the first broken one."""

    def __init__(self):
        self._buffer = b""  # what is left of the last piece, then the new one
        self._offset = 0  # of the buffer's start in the uncompressed stream
        self.num_records = 0
        self.problem = None

    def feed(self, data: bytes) -> None:
        if self.problem:
            return
        buffer, position = self._buffer + data, 0
        masked_crc = _TFRecordUtil._masked_crc32c
        while len(buffer) - position >= _HEADER_BYTES:
            length_bytes = buffer[position:position + 8]
            length, length_crc = struct.unpack_from("<QI", buffer, position)
            if masked_crc(length_bytes) != length_crc:
                self.problem = (f"record {self.num_records} at byte {self._offset + position}: "
                                f"the length's CRC does not match")
                break
            end = position + _HEADER_BYTES + length + _FOOTER_BYTES
            if len(buffer) < end:
                break  # the rest of the record comes with the next piece
            (data_crc,) = struct.unpack_from("<I", buffer, end - _FOOTER_BYTES)
            if masked_crc(buffer[position + _HEADER_BYTES:end - _FOOTER_BYTES]) != data_crc:
                self.problem = (f"record {self.num_records} at byte {self._offset + position}: "
                                f"the data's CRC does not match")
                break
            position = end
            self.num_records += 1
        # Only the unfinished record is kept, so a piece costs its own length, whatever the records' size.
        self._buffer = buffer[position:]
        self._offset += position

    def finish(self) -> None:
        if self._buffer and not self.problem:
            self.problem = (f"truncated: {len(self._buffer)} bytes after record {self.num_records - 1} "
                            f"(byte {self._offset}) are not a whole record")


def scan_shard(path: str, *, compression: str | None) -> ShardScan:
    """Reads the shard at `path` (local or URL; `compression` None or "GZIP") once and checks its framing."""
    digest, num_bytes, walker = hashlib.sha256(), 0, _FramingWalker()
    # 16 + MAX_WBITS: a gzip header and trailer around the deflate stream.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if compression == "GZIP" else None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            digest.update(chunk)
            num_bytes += len(chunk)
            if inflater is None:
                walker.feed(chunk)
                continue
            try:
                walker.feed(inflater.decompress(chunk))
            except zlib.error as error:
                walker.problem = walker.problem or f"not a valid gzip stream: {error}"
    if inflater is not None and not inflater.eof and not walker.problem:
        walker.problem = "truncated: the gzip stream ends early"
    walker.finish()
    return ShardScan(num_records=walker.num_records, num_bytes=num_bytes, sha256=digest.hexdigest(),
                     problem=walker.problem)
