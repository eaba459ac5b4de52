"""World importers: turn external world data into a neutral, in-memory :class:`WorldSpec`.

``spec`` holds the neutral types and our own JSON format; ``light`` reads LIGHT world maps and
ParlAI LIGHT dialogue fixtures, ``light_db`` LIGHT's entity database, ``smallville``
Generative Agents' Smallville (town, residents, recorded conversations), ``sillytavern``
SillyTavern World Info lorebooks, ``card`` Character Card V2 (JSON or PNG); ``examples``
locates the bundled example world and session. Nothing here touches the database; loading a
spec into it is a separate step (``memory.worlds.import_world``).
"""
