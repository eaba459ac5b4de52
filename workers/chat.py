"""``npc-memory chat``: talk to one NPC from a terminal and look at what it remembers.

It opens a session on a world of a running dialogue server (``--url``, ``--api-key``; or the
embedded stack it starts itself with ``--embedded``) and reads lines from standard input.
A plain line is said to the current NPC; the reply is printed as the model streams it. Lines starting
with ``/`` are commands (``/help`` lists them):

    /note       the NPC's session note and its last revisions
    /cards      the NPC's relationship and quest cards
    /evidence   what memory put in front of the model for the last reply
    /search Q   the session's memory searched for Q
    /tick       run a world tick for this session now
    /npc KEY    talk to another character (``/who`` lists them)
    /quit       leave (Ctrl-D too)

Everything goes through the typed HTTP client (``npc_memory_client``), so what it shows is
what a game backend would see.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TextIO

from npc_memory_client import ApiError, NpcMemoryClient, Token

HELP = """commands:
  /note       the NPC's session note and its last revisions
  /cards      the NPC's relationship and quest cards
  /evidence   what memory put in front of the model for the last reply
  /search Q   search the session's memory
  /tick       run a world tick for this session now
  /npc KEY    talk to another character;  /who  list them
  /quit       leave (Ctrl-D too)"""


class ChatSession:
    """One terminal conversation over ``client``.

    Args:
        client: a connected ``NpcMemoryClient``.
        world: the world key to open a session on.
        npc: the character to talk to first (default: the world's first character).
        out: where to write (default: standard output).
        player_name: the player's name in the session.
    """

    def __init__(self, client: NpcMemoryClient, world: str, npc: str | None = None,
                 out: TextIO | None = None, player_name: str = "player"):
        import sys

        self.client = client
        self.out = out or sys.stdout
        session = client.open_session(world, player_name=player_name)
        self.session_id = session.session_id
        self.characters = {c.npc_id: c.name for c in session.characters}
        if not self.characters:
            raise ValueError(f"world {world!r} has no characters to talk to")
        if npc is not None and npc not in self.characters:
            raise ValueError(f"no character {npc!r} in world {world!r}; /who lists them")
        self.npc = npc or next(iter(self.characters))
        self.last_player_text = ""
        self.last_retrieved: list = []
        self._commands: dict[str, Callable[[str], None]] = {
            "/help": lambda _a: self._print(HELP), "/note": self._note, "/cards": self._cards,
            "/evidence": self._evidence, "/search": self._search, "/tick": self._tick,
            "/npc": self._switch, "/who": self._who,
        }

    def _print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def banner(self) -> None:
        """Print the session id and who is being talked to."""
        self._print(f"session {self.session_id}; talking to {self.characters[self.npc]} "
                    f"({self.npc}). /help lists commands.")

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the user asked to leave."""
        line = line.strip()
        if not line:
            return True
        if line in ("/quit", "/exit"):
            return False
        try:
            if line.startswith("/"):
                name, _, arg = line.partition(" ")
                command = self._commands.get(name)
                if command is None:
                    self._print(f"unknown command {name}; /help lists them")
                else:
                    command(arg.strip())
            else:
                self._say(line)
        except ApiError as exc:
            self._print(f"[{exc.status}] {exc.detail}")
        return True

    def _say(self, text: str) -> None:
        """Say ``text`` to the NPC; print the reply as the model streams it."""
        self.last_player_text = text
        self.out.write(f"{self.characters[self.npc]}: ")
        self.out.flush()
        reply = None
        for event in self.client.turn_stream(self.session_id, self.npc, text):
            if isinstance(event, Token):
                self.out.write(event.text)
                self.out.flush()
            else:
                reply = event
        self._print()
        self.last_retrieved = list(reply.retrieved) + list(reply.evidence)
        ttft = f", first words after {reply.ttft_ms:.0f} ms" if reply.ttft_ms is not None else ""
        self._print(f"  ({reply.latency_ms:.0f} ms{ttft}; {len(self.last_retrieved)} memories "
                    "used: /evidence shows them)")

    def _note(self, _arg: str) -> None:
        entry = self.client.entry(self.session_id, self.npc)
        note = (entry.get("note") or {}).get("content") or "(none yet)"
        self._print(f"note of {self.characters[self.npc]}: {note}")
        for rev in (entry.get("revisions") or [])[-3:]:
            self._print(f"  v{rev['version']} ({rev['cause']}): {rev['event_summary']}")

    def _cards(self, _arg: str) -> None:
        cards = self.client.cards(self.session_id, self.npc)
        self._print(json.dumps(cards, indent=2, ensure_ascii=False))

    def _evidence(self, _arg: str) -> None:
        if not self.last_player_text:
            self._print("nothing said yet")
            return
        self._print(f"retrieved for {self.last_player_text!r}:")
        for item in self.last_retrieved or ["(nothing)"]:
            self._print(f"  - {item}")

    def _search(self, query: str) -> None:
        if not query:
            self._print("usage: /search WORDS")
            return
        hits = self.client.search(self.session_id, query, k=5)
        if not hits:
            self._print("  (nothing found)")
        for hit in hits:  # npc_memory_client.DocumentHit or EvidenceHit
            label = (hit.title or hit.key or "document") if hit.kind == "document" else (
                f"said in turn {hit.seq}")
            text = hit.text.replace("\n", " ")
            self._print(f"  {hit.score:.3f} [{hit.kind}] {label}: {text[:160]}")

    def _tick(self, _arg: str) -> None:
        tick = self.client.tick(self.session_id)
        self._print(f"world tick {tick.tick_id} queued (task {tick.task_id})")

    def _switch(self, key: str) -> None:
        if key not in self.characters:
            self._print(f"no character {key!r}; /who lists them")
            return
        self.npc = key
        self._print(f"now talking to {self.characters[key]} ({key})")

    def _who(self, _arg: str) -> None:
        for key, name in self.characters.items():
            self._print(f"  {key}: {name}{'  <-' if key == self.npc else ''}")


def run_chat(client: NpcMemoryClient, world: str, npc: str | None, stdin: TextIO,
             out: TextIO, prompt: str = "you> ") -> None:
    """The read-eval-print loop until ``/quit`` or end of input."""
    chat = ChatSession(client, world, npc, out=out)
    chat.banner()
    while True:
        out.write(prompt)
        out.flush()
        line = stdin.readline()
        if not line:  # Ctrl-D
            out.write("\n")
            break
        if not chat.handle(line):
            break
    out.write("bye\n")
    out.flush()
