"""The advisor: profile a user's data, weigh their goals, recommend a customization approach.

Control plane (torch-free): the API's ``POST /advice`` extension and ``tuneforge advise`` call the
same :func:`tuneforge.advisor.rules.advise`; the bake-off (``advise --try``) is a boto3 client of a
running server, like the rest of the CLI.
"""
