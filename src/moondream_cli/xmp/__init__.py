"""XMP sidecars for photo managers (digiKam, darktable, Immich, PhotoPrism): the caption in
``dc:description``, ``--style tags``' keywords in ``dc:subject``, ``lr:hierarchicalSubject``
and ``digiKam:TagsList``, merged into what the sidecar already holds (docs/xmp.md).

``rules`` is what mdream writes and what it leaves alone, as pure functions of the
properties it reads; ``packet`` is the one place that uses the XMP library (python-exiv2,
the 'xmp' extra); ``sidecars`` finds, reads and atomically replaces the sidecar files.
"""
