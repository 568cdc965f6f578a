"""The clinic's DICOM network: receive studies, judge them whole, send results back.

- ``receiver``: a Storage SCP (C-ECHO, C-STORE) writing each instance atomically into the
  inbox, from where the agent's journal takes over;
- ``studies``: groups the per-slice reports by StudyInstanceUID and, once a study has been
  quiet for ``[studies] settle_seconds``, writes ``OUTBOX/studies/<uid>.json`` and ``.html``
  with a verdict (``verdict``: the documented rule);
- ``sr``, ``sendqueue`` and ``sender``: the verdict as a DICOM Structured Report, queued on
  disk (it survives restarts) and sent by C-STORE to ``[pacs] send_to``;
- ``services``: starts and stops all of it with ``edge-agent watch``.

This package's ``__init__`` imports nothing heavy: ``edge.config`` reads its settings.
"""
