"""``reinflow logview``: a local web page over a run's rollout and judged Parquet files.

One idea per module: ``settings`` (the options and their defaults), ``cache`` (values derived from a
file, kept until its mtime changes), ``runs`` (which runs and episode sets are on disk),
``episodes`` (the episode table, sorting, filtering, one episode in full), ``curve`` (the reward
curve), ``tokens`` (token ids to text with the run's tokenizer), ``app`` (the HTTP routes),
``server`` (binding and serving) and ``background`` (``train --with-logview``). The page itself is
``static/``: plain HTML, CSS and JS, no CDN, model output always inserted as text.
"""
