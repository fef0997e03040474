"""The destination as a BagIt bag (RFC 8493): writing, sealing, auditing and verifying it.

Layout of a finished DEST::

    bagit.txt                 BagIt-Version 1.0, UTF-8 (written last, by seal_bag)
    bag-info.txt              source, tool version, totals, storage decisions, Payload-Oxum
    manifest-sha256.txt       "<sha256>  data/<path>" for every payload file (sha256sum -c works)
    manifest-md5.txt          the same with md5
    report.json, report.md    what the compress job did (tag files, see empcompress.report)
    ascp-file-list.txt        every verified file of the bag, one per line (ascp --file-list)
    tagmanifest-sha256.txt    checksums of the tag files above
    tagmanifest-md5.txt
    data/...                  the payload: SRC's tree, movies as TIFF stacks
    .empcompress/             the journal and lock (state of the compress job; not part of the bag)

The writer's sequence: :func:`write_bag` (removes bagit.txt, writes everything
else), :func:`audit_bag` with ``expected=`` and ``sealed=False``, then
:func:`seal_bag` only if the audit found nothing. :func:`verify_bag` re-checks a
bag (ours or anyone's) without trusting it.

Parts: :mod:`.manifest` (formats: names, lines, path encoding), :mod:`.write`
(writing and sealing), :mod:`.audit` (the fast audit, hostile bags), :mod:`.verify`
(checksums and decoding).
"""

from .audit import BagAudit, audit_bag, inspect_bag, is_our_bag_info, payload_bytes_on_disk
from .manifest import (
    BAG_DECLARATION_FILES,
    BAG_INFO_TXT,
    BAGIT_TEXT,
    BAGIT_TXT,
    BAGIT_VERSION,
    MANIFEST_ALGORITHMS,
    PAYLOAD_DIRNAME,
    SUPPORTED_ALGORITHMS,
    BagProblem,
    PayloadFile,
    decode_manifest_path,
    encode_manifest_path,
    read_bag_info,
    read_manifest,
)
from .verify import BagVerifyResult, ProgressCallback, verify_bag
from .write import remove_bag_declaration, rewrite_tag_file, seal_bag, write_bag, write_text_atomically

__all__ = [
    "BAGIT_VERSION",
    "PAYLOAD_DIRNAME",
    "BAGIT_TXT",
    "BAG_INFO_TXT",
    "BAGIT_TEXT",
    "MANIFEST_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "BAG_DECLARATION_FILES",
    "PayloadFile",
    "BagProblem",
    "BagAudit",
    "BagVerifyResult",
    "ProgressCallback",
    "encode_manifest_path",
    "decode_manifest_path",
    "write_text_atomically",
    "write_bag",
    "seal_bag",
    "remove_bag_declaration",
    "rewrite_tag_file",
    "audit_bag",
    "inspect_bag",
    "is_our_bag_info",
    "payload_bytes_on_disk",
    "read_manifest",
    "read_bag_info",
    "verify_bag",
]
