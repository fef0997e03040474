"""The fast audit of a bag: structure, completeness and the dependencies of our TIFFs, no payload hashed.

:func:`audit_bag` checks, collecting every problem:

- ``bagit.txt`` (unless ``sealed=False``: the writer audits before sealing), and
  ``bag-info.txt``'s Payload-Oxum against the payload on disk;
- every payload file on disk is listed exactly once in every payload manifest and
  every manifest entry is a regular file inside ``data/`` (with ``expected``: of
  the expected size, with the expected checksums, and no more, no fewer files);
- every tag manifest entry is a regular file inside the bag whose checksums match
  (tag files are small, so they are hashed here);
- every TIFF of ours (one :func:`empcompress.reconstruct.read_record` reads) whose
  record names a gain reference: the reference is inside ``data/``, listed in
  ``manifest-sha256.txt`` with exactly the recorded sha256, and present.

A received bag is not trusted (the model is bagit-python's validation, which
never follows a path out of the bag):

- the payload walk never follows a symbolic link; symbolic links, FIFOs, devices
  and sockets in ``data/`` are problems, never opened;
- a (tag) manifest path that is absolute, has a ``..`` component, passes through a
  symbolic link or is not a regular file is a problem and is never opened (every
  component is ``lstat``-ed, then the file is opened with
  :func:`~empcompress.files.open_regular`: no link followed, never blocks);
- a manifest line that is not valid text or not ``<checksum> <path>`` is a problem
  naming the manifest and the line;
- messages name paths (control characters escaped) and checksums of files in the
  bag only: nothing outside the bag is ever read.

Which bags are ours, and tag manifests
--------------------------------------

A bag is *ours* when ``expected`` is given or its bag-info.txt says so
(``Bag-Software-Agent: empcompress ...`` or any ``Empcompress-*`` field). Ours must
have ``manifest-{sha256,md5}.txt``, ``tagmanifest-{sha256,md5}.txt``, a bag-info.txt
with Payload-Oxum, and every top-level file (bagit.txt, bag-info.txt, manifests,
reports) listed in every tag manifest: deleting a tag manifest, or a line of one,
is a problem. A foreign bag is checked as ``bagit`` checks it: at least one payload
manifest, of any algorithm hashlib guarantees (sha512, sha1, ...); tag manifests are
optional, and when present every entry is checked but unlisted tag files are
accepted; Payload-Oxum is checked when present.

Parts
-----

:mod:`.run` (:func:`inspect_bag` and :func:`audit_bag`: every check in order, their
problems collected), :mod:`.result` (:class:`BagAudit`, what the audit found),
:mod:`.disk` (the bag on disk looked at without following links: kinds, the top
level, the payload walk, small tag files read safely), :mod:`.declaration`
(bagit.txt, bag-info.txt, Payload-Oxum, whose bag it is), :mod:`.manifests`
(the manifests read; the payload against the payload manifests and ``expected``),
:mod:`.tag_files` (the tag manifests and, in our bags, their coverage),
:mod:`.tiffs` (our TIFFs' records and their gain references).
"""

from .declaration import is_our_bag_info
from .disk import inspect_path as inspect_path
from .disk import payload_bytes_on_disk
from .result import BagAudit
from .run import audit_bag, inspect_bag
from .tag_files import STATE_DIRNAME as STATE_DIRNAME
from .tiffs import TIFF_SUFFIXES as TIFF_SUFFIXES
from .tiffs import _gain_target as _gain_target

__all__ = ["BagAudit", "audit_bag", "inspect_bag", "is_our_bag_info", "payload_bytes_on_disk"]
