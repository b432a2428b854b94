"""Tests across both services: real tokens of one accepted or refused by the other."""
