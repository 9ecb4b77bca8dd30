"""A helper process that hashes the dataset files its parent names, one record per file.

Started by orchestrator.dataset.tree as `python -I -S helper.py`; standard library only, so it
starts in milliseconds. Input frames: a little-endian u32 length, the size the parent saw the
file have, then that many path bytes; a length of 0 asks for the records so far to be flushed.
Output: one RECORD per path, in order.
"""
import _signal as signal        # not `signal`, which imports enum: a third of the start-up
import os
import struct
import sys

try:
    from _hashlib import openssl_sha256 as sha256    # what hashlib.sha256 is, without its import
except ImportError:                                  # an interpreter built without OpenSSL
    from hashlib import sha256

# digest, bytes read, then the file's fstat once the size the walk saw was read: device,
# inode, size, mtime, ctime; last an errno (0: read fine).
RECORD = struct.Struct("<32sqQQqqqi")
FRAME = struct.Struct("<IQ")
BLOCK = 1 << 20


def hash_file(path: bytes, expected: int, view: memoryview) -> bytes:
    try:
        # O_NOFOLLOW: a file swapped for a link since the walk is not followed out of the dataset.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            # Read the size the walk saw, then let fstat say whether that was all, rather than
            # one more read to meet the end: one system call fewer per file.
            digest, size = sha256(), 0
            while size < expected and (n := os.readv(fd, [view])):
                digest.update(view[:n])
                size += n
            st = os.fstat(fd)
            if st.st_size != size:      # it grew meanwhile: hash to the end, as sha256sum does
                while n := os.readv(fd, [view]):
                    digest.update(view[:n])
                    size += n
        finally:
            os.close(fd)
    except OSError as exc:
        return RECORD.pack(b"", 0, 0, 0, 0, 0, 0, exc.errno or -1)   # never 0: that is success
    return RECORD.pack(digest.digest(), size, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                       st.st_ctime_ns, 0)


def main() -> None:
    # The parent owns interruption: it kills its helpers when it stops, and a Ctrl-C sent to
    # the whole process group must not print a second traceback from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    view = memoryview(bytearray(BLOCK))
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    status = 0
    try:
        while len(frame := source.read(FRAME.size)) == FRAME.size:
            length, expected = FRAME.unpack(frame)
            if length == 0:
                sink.flush()
            else:
                sink.write(hash_file(source.read(length), expected, view))
        sink.flush()
    except BrokenPipeError:
        pass                # the parent is gone or gave up; nobody is left to tell
    except BaseException:   # noqa: BLE001 (the parent reports the files left unanswered)
        status = 1
    finally:
        os._exit(status)    # no flushing at exit into a pipe that may be closed


if __name__ == "__main__":
    main()
