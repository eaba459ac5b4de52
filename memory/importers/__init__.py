"""World importers: turn external world data into a neutral, in-memory :class:`WorldSpec`.

``spec`` holds the neutral types and our own JSON format, ``light`` reads LIGHT world maps and
ParlAI LIGHT dialogue fixtures, ``examples`` locates the bundled example world and session.
Nothing here touches the database; loading a spec into it is a separate step.
"""
