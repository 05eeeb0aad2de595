"""Exports of a trained student (`registry`: format -> writer; `run`: the entry points) and `obow import`."""
