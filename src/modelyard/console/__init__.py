"""The web console: a server-rendered page for the people who own the models (`modelyard console`).

Models, a version's evaluation, comparisons, predictions through the V2 endpoint, batch scoring, the
monitoring report, and promote and rollback, each with the JSON endpoint the page itself calls. Pages are
rendered on the server with inline SVG plots and one small script, so nothing is fetched from a CDN and
there is no front-end build. Serving, training and the pipeline never import it.
"""
