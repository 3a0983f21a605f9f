"""Destinations: the Braze sync client (:mod:`.braze`) and the Braze emulator (:mod:`.emulator`).

Nothing is imported here, so that importing the client never loads the emulator's server stack.
"""
