"""Static files of the web dashboard (index.html, *.js, *.css), served by api/handlers/dashboard.py.

A package (not a bare folder) so importlib.resources finds the files in a checkout, a wheel and the
zip app alike. Plain ES modules, no build step: what is here is what the browser runs.
"""
