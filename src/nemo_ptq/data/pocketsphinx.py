"""The real speech clips of Debian's pocketsphinx-testdata package, with their transcripts.

Ten 16 kHz mono recordings: five LibriVox read-speech sentences and five spoken card names.
Each folder has a transcript file with lines `<s> words </s> (file id)`.
"""

from __future__ import annotations

import re
from pathlib import Path

from nemo_ptq.data.utterance import SourceUtterance, utterance_id
from nemo_ptq.errors import DataError

DATA_DIR = Path("/usr/share/pocketsphinx/test/data")
# (folder, transcript file) in the order the clips are listed.
TRANSCRIPTS = (("librivox", "transcription"), ("cards", "cards.transcription"))
_LINE = re.compile(r"^\s*<s>(?P<text>.*)</s>\s*\((?P<file_id>[^)]+)\)\s*$")


def pocketsphinx_utterances(data_dir: Path = DATA_DIR) -> list[SourceUtterance]:
    utterances: list[SourceUtterance] = []
    for folder, transcript_name in TRANSCRIPTS:
        transcript = data_dir / folder / transcript_name
        if not transcript.is_file():
            raise DataError(f"{transcript} not found: install the clips with "
                            "`apt-get install pocketsphinx-testdata`")
        for line_no, line in enumerate(transcript.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            match = _LINE.match(line)
            if match is None:
                raise DataError(f"{transcript} line {line_no} is not `<s> words </s> (id)`: "
                                "reinstall pocketsphinx-testdata")
            file_id = match["file_id"].strip()
            utterances.append(SourceUtterance(
                id=utterance_id(len(utterances), f"{folder}-{file_id[-4:]}"),
                text=" ".join(match["text"].split()),
                audio_path=data_dir / folder / f"{file_id}.wav",
                origin=f"{transcript} line {line_no}",
                source=str(data_dir / folder / f"{file_id}.wav"),
            ))
    return utterances
