"""Compressed layer tarballs, cut or damaged: what the user is told.

python-zstandard's stream_reader takes input that ends inside a frame for
the end of the data, so that apply_layer follows the frames itself
(btrfsx.archive.apply._ZstdFrames) and calls such a stream truncated.  The
tracker is checked here against frames of every header layout (made by
hand and accepted by the reference decoder) and of the compressor's own
making, cut at every byte; then the gzip and zstd messages as apply_layer
raises them, once, with no other wording around them.  None of this needs
btrfs: apply_layer writes into a temporary directory."""

from __future__ import annotations

import gzip
import io
import itertools
import random
import struct
import tarfile

import pytest
import zstandard

from btrfsx.archive.apply import _ZstdFrames, apply_layer, decompressed
from btrfsx.errors import ArchiveError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DICT_ID = 200  # fits the 1-byte dictionary id field too


def _dictionary() -> zstandard.ZstdCompressionDict:
    rnd = random.Random(1)
    samples = [rnd.randbytes(8) + (b"common words %d here " % i) * 20 for i in range(500)]
    return zstandard.train_dictionary(2048, samples, dict_id=DICT_ID)


DICTIONARY = _dictionary()


def truncated(n: int) -> str:
    return f"the zstd stream is truncated: it ends inside a frame, after {n} compressed bytes"


def not_a_frame(n: int) -> str:
    return f"the zstd stream is corrupt: byte {n} starts neither a zstd frame nor a skippable frame"


def track(data: bytes, step: int = 1 << 20) -> bytes:
    """``data`` through the tracker, read ``step`` bytes at a time, to its end."""
    frames = _ZstdFrames(io.BufferedReader(io.BytesIO(data)))
    out = []
    while chunk := frames.read(step):
        out.append(chunk)
    return b"".join(out)


def reference(data: bytes, dict_data: zstandard.ZstdCompressionDict | None = None) -> bytes:
    """What python-zstandard alone decompresses from ``data``."""
    reader = zstandard.ZstdDecompressor(dict_data=dict_data).stream_reader(io.BytesIO(data), read_across_frames=True)
    out = []
    while chunk := reader.read(1 << 16):
        out.append(chunk)
    return b"".join(out)


def unzstd(data: bytes) -> bytes:
    """What apply_layer decompresses from ``data``, read to its end."""
    reader = decompressed(io.BytesIO(data))
    out = []
    while chunk := reader.read(1 << 16):
        out.append(chunk)
    return b"".join(out)


def block(content: bytes, last: bool, rle: bool = False) -> bytes:
    """A raw block, or an RLE block of ``content`` (one byte repeated)."""
    header = (len(content) << 3) | ((1 if rle else 0) << 1) | int(last)
    return header.to_bytes(3, "little") + (content[:1] if rle else content)


def handmade(content: bytes, fcs_flag: int, single_segment: bool, did_flag: int, rle: bool = False,
             descriptor_bits: int = 0) -> bytes:
    """A frame laid out field by field as RFC 8878, section 3.1.1, has it,
    its content in two raw (or RLE) blocks."""
    descriptor = fcs_flag << 6 | int(single_segment) << 5 | did_flag | descriptor_bits
    out = ZSTD_MAGIC + bytes([descriptor])
    if not single_segment:
        out += bytes([(17 - 10) << 3])  # a window of 128 KiB
    if did_flag:
        out += DICT_ID.to_bytes((0, 1, 2, 4)[did_flag], "little")
    fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if fcs_size:
        out += (len(content) - (256 if fcs_size == 2 else 0)).to_bytes(fcs_size, "little")
    half = len(content) // 2
    return out + block(content[:half], False, rle) + block(content[half:], True, rle)


def skippable(data: bytes, nibble: int = 0) -> bytes:
    return struct.pack("<II", 0x184D2A50 | nibble, len(data)) + data


LAYOUTS = [(fcs, single, did, rle) for fcs, single, did, rle
           in itertools.product(range(4), (False, True), range(4), (False, True))]


@pytest.mark.parametrize("fcs_flag, single_segment, did_flag, rle", LAYOUTS,
                         ids=[f"fcs{f}-{'single' if s else 'window'}-did{d}-{'rle' if r else 'raw'}"
                              for f, s, d, r in LAYOUTS])
def test_every_frame_header_layout(fcs_flag, single_segment, did_flag, rle):
    """Each content size field (0, 1, 2, 4, 8 bytes), with and without a
    window descriptor, each dictionary id size, raw and RLE blocks: the
    reference decoder takes the frame, the tracker passes it unchanged and
    finds every cut inside it."""
    content = (b"r" if rle else b"q") * (300 if fcs_flag == 1 else 200)  # a 2-byte field holds 256 and up
    frame = handmade(content, fcs_flag, single_segment, did_flag, rle)
    assert reference(frame, DICTIONARY) == content
    for step in (1, 2, 5, 1 << 20):
        assert track(frame, step) == frame
    for cut in range(1, len(frame)):
        with pytest.raises(ArchiveError) as e:
            track(frame[:cut])
        assert str(e.value) == truncated(cut)


def _compressed(content: bytes, **options) -> bytes:
    return zstandard.ZstdCompressor(**options).compress(content)


def _streamed(*parts: bytes, **options) -> bytes:
    """A frame written in pieces with a flush between them: no content size,
    a window descriptor, a block per flush."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(**options).stream_writer(out, closefd=False) as writer:
        for part in parts:
            writer.write(part)
            writer.flush()
    return out.getvalue()


RANDOM = random.Random(7).randbytes(300_000)
MIXED = RANDOM[:20_000] + bytes(400_000) + b"abc" * 50_000  # raw, RLE and compressed blocks
STREAMS = {
    "default": _compressed(MIXED),
    "checksum": _compressed(MIXED, write_checksum=True),
    "no content size": _compressed(MIXED, write_content_size=False),
    "checksum, no content size": _compressed(MIXED, write_checksum=True, write_content_size=False),
    "level 19": _compressed(MIXED, level=19),
    "incompressible": _compressed(RANDOM, write_checksum=True),
    "empty": _compressed(b""),
    "one byte": _compressed(b"x", write_checksum=True),
    "dictionary id": zstandard.ZstdCompressor(dict_data=DICTIONARY).compress(b"common words 7 here " * 30),
    "streamed with flushes": _streamed(b"x" * 100, RANDOM[:5000], bytes(70_000), write_checksum=True),
    "multi-frame": _compressed(MIXED[:100_000]) + _compressed(b"second", write_checksum=True) + _compressed(b""),
    "skippable first": skippable(b"metadata") + _compressed(MIXED[:5000]),
    "skippable between and last": (_compressed(b"one") + skippable(b"", 0xF) + skippable(b"x" * 70_000, 3)
                                   + _compressed(b"two") + skippable(b"end")),
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_complete_streams_pass_through_unchanged(name):
    data = STREAMS[name]
    for step in (1, 3, 4096, 131_075, 1 << 20):
        if step < 100 and len(data) > 20_000:
            continue  # byte by byte on the small ones
        assert track(data, step) == data
    if name != "dictionary id":
        assert unzstd(data) == reference(data)


def _frames() -> list[tuple[bytes, bytes]]:
    """Small frames of every kind, with their contents."""
    return [(_compressed(b"first frame " * 20, write_checksum=True), b"first frame " * 20),
            (skippable(b"user data"), b""),
            (_streamed(b"a" * 50, b"b" * 50), b"a" * 50 + b"b" * 50),
            (_compressed(b""), b""),
            (skippable(b"", 0xA), b""),
            (_compressed(bytes(1000), write_content_size=False), bytes(1000)),
            (handmade(b"z" * 300, 1, False, 0, rle=True), b"z" * 300)]


def test_a_stream_cut_anywhere_is_complete_only_at_frame_boundaries():
    frames = _frames()
    stream = b"".join(frame for frame, _ in frames)
    boundaries, contents, end = {0: b""}, b"", 0
    for frame, content in frames:
        end += len(frame)
        contents += content
        boundaries[end] = contents
    for cut in range(len(stream) + 1):
        data = stream[:cut]
        for step in (1, 7, 1 << 20):
            if cut in boundaries:
                assert track(data, step) == data
            else:
                with pytest.raises(ArchiveError) as e:
                    track(data, step)
                assert str(e.value) == truncated(cut), (cut, step)
        if cut < 2:
            continue  # not yet told from a plain tar by its first bytes
        if cut in boundaries:
            assert unzstd(data) == boundaries[cut]
        else:
            with pytest.raises(ArchiveError) as e:
                unzstd(data)
            assert str(e.value) == truncated(cut), cut


def test_what_follows_the_last_frame_is_a_frame_or_nothing():
    frame = _compressed(b"content", write_checksum=True)
    with pytest.raises(ArchiveError) as e:
        track(frame + b"garbage!")
    assert str(e.value) == not_a_frame(len(frame))
    with pytest.raises(ArchiveError) as e:
        track(frame + b"\x01\x02")  # too short for a magic number, and not the start of one
    assert str(e.value) == not_a_frame(len(frame))
    for start in (ZSTD_MAGIC[:3], b"\x5c\x2a"):
        with pytest.raises(ArchiveError) as e:
            track(frame + start)
        assert str(e.value) == truncated(len(frame) + len(start))


def test_reserved_fields_are_corrupt():
    with pytest.raises(ArchiveError, match=r"^the zstd stream is corrupt: the frame at byte 0 sets the reserved "
                                           r"bit of its header$"):
        track(handmade(b"q" * 200, 0, True, 0, descriptor_bits=0x08))
    frame = handmade(b"q" * 200, 0, True, 0)
    first_block = len(ZSTD_MAGIC) + 2
    bad = bytearray(frame)
    bad[first_block] |= 0b110  # block type 3
    with pytest.raises(ArchiveError, match=rf"^the zstd stream is corrupt: the block at byte {first_block} has "
                                           r"the reserved block type 3$"):
        track(bytes(bad))


def test_the_tracker_reads_blocks_by_count():
    """A read costs per block, not per byte: a 1 MiB raw block stream is
    parsed in as many steps as it has blocks."""
    content = RANDOM[:128 * 1024] * 8
    frame = ZSTD_MAGIC + bytes([0x00, (17 - 10) << 3]) + b"".join(
        block(content[i:i + 128 * 1024], i + 128 * 1024 >= len(content)) for i in range(0, len(content), 128 * 1024))
    frames = _ZstdFrames(io.BufferedReader(io.BytesIO(frame)))
    parsed = 0
    parse = frames._parse

    def counting(header: bytes) -> int:
        nonlocal parsed
        parsed += 1
        return parse(header)
    frames._parse = counting
    while frames.read(1 << 20):
        pass
    assert parsed == 1 + 1 + 8  # the magic number, the descriptor, 8 block headers


# ================================================================ through apply_layer

def _tar(*entries: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = _tar(("a", b"a\n"), ("big", RANDOM[:200_000] + bytes(200_000)), ("c", b"c\n"))


@pytest.fixture
def apply(tmp_path):
    """apply_layer into a fresh directory; the error's message, or None."""
    count = itertools.count()

    def run(data: bytes) -> str | None:
        root = tmp_path / str(next(count))
        root.mkdir()
        try:
            apply_layer(str(root), io.BytesIO(data))
        except ArchiveError as e:
            return str(e)
        return None
    return run


def test_zstd_cut_or_corrupt_through_apply_layer(apply):
    data = _compressed(TAR, write_checksum=True)
    assert apply(data) is None
    for cut in (2, 3, 4, 5, 9, 100, len(data) // 2, len(data) - 4, len(data) - 1):
        assert apply(data[:cut]) == truncated(cut), cut
    assert apply(data + b"junk") == not_a_frame(len(data))
    assert apply(data + skippable(b"trailer")) is None
    bad = bytearray(data)
    bad[len(data) // 3] ^= 0x55
    message = apply(bytes(bad))
    assert message is not None and message.startswith("the zstd stream is corrupt: "), message
    assert "zstd decompress error" not in message
    assert apply(_compressed(b"")) == "the layer tarball is empty"


def test_a_complete_zstd_stream_of_a_cut_tar_is_the_tar_that_is_truncated(apply):
    cut = TAR[:1536 + 1000]  # inside the contents of 'big' (header at 1024, data from 1536)
    assert apply(_compressed(cut)) == ("the layer tarball is truncated at byte 2536, inside the contents of 'big' "
                                       "(1000 of 400000 bytes)")


def test_gzip_cut_or_corrupt_through_apply_layer(apply):
    data = gzip.compress(TAR, mtime=0)
    assert apply(data) is None
    for cut in (2, 3, 10, 11, 100, len(data) // 2, len(data) - 8, len(data) - 1):
        assert apply(data[:cut]) == f"the gzip stream is truncated: it ends after {cut} compressed bytes", cut
    bad = bytearray(data)
    bad[-6] ^= 0xFF  # the CRC
    message = apply(bytes(bad))
    assert message is not None and message.startswith("the gzip stream is corrupt: CRC check failed"), message
    bad = bytearray(data)
    bad[2] = 7  # the compression method
    assert apply(bytes(bad)) == "the gzip stream is corrupt: Unknown compression method"
    assert apply(data + b"trailing junk") == "the gzip stream is corrupt: Not a gzipped file (b'tr')"
    deflate = gzip.compress(_tar(("text", b"compressible " * 10_000)), mtime=0)
    bad = bytearray(deflate)
    bad[11] ^= 0xFF  # in the first deflate block's code lengths (the member header takes 10 bytes)
    assert apply(bytes(bad)) == ("the gzip stream is corrupt: Error -3 while decompressing data: invalid code "
                                 "lengths set")


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_compressed_message_is_said_once(apply, compression):
    """Raised while the reader is inside a member's contents, the
    decompressor's error is not wrapped in the tar reader's or the entry's."""
    packed = gzip.compress(TAR, mtime=0) if compression == "gzip" else _compressed(TAR)
    message = apply(packed[:len(packed) // 2])
    assert message is not None and message.startswith(f"the {compression} stream is truncated: ")
    assert "layer tarball" not in message and "entry" not in message and message.count("truncated") == 1


def test_the_input_error_of_a_compressed_stream_is_the_inputs(tmp_path):
    class Failing(io.RawIOBase):
        def __init__(self, data: bytes):
            self.data = data

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            if len(self.data) < 1000:
                raise OSError(5, "injected read error")
            n = min(len(b), len(self.data) - 999)
            b[:n], self.data = self.data[:n], self.data[n:]
            return n
    with pytest.raises(OSError) as e:
        apply_layer(str(tmp_path), Failing(_compressed(TAR)))
    assert str(e.value) == "[Errno 5] injected read error"


def test_zstd_detection_by_magic_prefix():
    """A stream cut inside the first magic number is a zstd stream cut short;
    one byte alone is not told from a tar's first."""
    with pytest.raises(ArchiveError) as e:
        unzstd(ZSTD_MAGIC[:3])
    assert str(e.value) == truncated(3)
    assert unzstd(ZSTD_MAGIC[:1]) == ZSTD_MAGIC[:1]
    assert unzstd(skippable(b"meta") + _compressed(b"after")) == b"after"


def test_random_bytes_after_a_magic_number_are_refused_or_whole_frames():
    """Arbitrary bytes after a zstd magic number: corrupt or truncated (by
    the tracker or the decoder), or frames both take whole; never another
    exception, never a quiet end."""
    rnd = random.Random(3)
    for _ in range(300):
        data = ZSTD_MAGIC + rnd.randbytes(rnd.randrange(0, 60))
        try:
            out = unzstd(data)
        except (ArchiveError, zstandard.ZstdError):
            continue
        # the tracker found whole frames; so did the decoder
        assert out == reference(data)
