"""Model bundles: fetch Moondream2 once, verify it, quantize it, pack it as a portable
tarball, install it. A corner of its own: inference never imports it (a test holds that).

- :mod:`.recipe`: what to fetch (the JSON recipes shipped in the top-level bundles/ folder);
- :mod:`.fetch`: the pipeline, from the hub or a folder to an installed bundle;
- :mod:`.hub`: the Hugging Face hub client; :mod:`.sources`: checking the files it gives;
- :mod:`.quantize`: llama.cpp's quantizer;
- :mod:`.tarball`: writing the deterministic tarball; :mod:`.install`: installing one;
- :mod:`.installed`: the installed bundles (list, default, verify, export, remove);
- :mod:`.staging`: building a folder beside its target and moving it into place.
"""
