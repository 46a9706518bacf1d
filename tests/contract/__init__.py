"""The solver contract suite: one registry row per public differentiable solver and method.

``registry.py`` holds the rows (a small seeded float64 problem each, its differentiable
arguments and fields); ``test_contract.py`` runs every check on every row;
``test_hypothesis.py`` searches input scales where a table would not.
"""
