"""The `.l2` artifact: range-coded container, bit-exact streaming decoder (format: docs/format.md).

    encode_l2(contents) -> bytes              write_l2(contents, path) -> file bytes (atomic)
    encoded_size(contents) -> exact bytes      load_l2(path, device) -> state_dict (bit-exact)
    payload_sizes(contents) -> bytes per tensor
    read_manifest(path) -> Manifest            decode_contents(path) -> ArtifactContents (symbols)

Every problem with a file raises `L2FormatError` (a `ValueError`); invalid records given to the writer raise
`ValueError` naming the tensor.
"""

from compression_core.coding.errors import L2FormatError
from compression_core.coding.manifest import Manifest, TensorEntry
from compression_core.coding.reader import decode_contents, load_l2, read_manifest, verify_file
from compression_core.coding.writer import encode_l2, encoded_size, payload_sizes, write_l2

__all__ = [
    "L2FormatError",
    "Manifest",
    "TensorEntry",
    "decode_contents",
    "encode_l2",
    "encoded_size",
    "load_l2",
    "payload_sizes",
    "read_manifest",
    "verify_file",
    "write_l2",
]
