"""``make bench``: recozoo's speed and quality side by side with RecBole 1.2.1, and how its cost
grows with data (`recozoo.bench.__main__` lists the sections). A benchmark measures and writes
figures (bench/results.md, bench/results.json); it asserts nothing."""
