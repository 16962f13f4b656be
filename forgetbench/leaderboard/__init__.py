"""The leaderboard: rank methods by safety under attack, from the raw results rows.

``rank`` holds the maths (S-AUC, the two-level bootstrap, rank groups, gates, secondary columns),
``tracks`` groups rows by protocol, ``build`` writes the tables, plots and static site,
``submit`` packs, checks and adds submission bundles. ``leaderboard/README.md`` documents the
formulas.
"""
