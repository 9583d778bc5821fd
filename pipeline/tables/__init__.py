"""The paper's tables as configs: the runs that fill each table or figure and the paper's values (`spec`), and
what `launch reproduce` was asked for a table, kept beside its runs (`request`).
"""
