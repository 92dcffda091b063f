"""Helpers shared by the test suite: foreign test material (see ``foreign``)."""
