"""diffloc editors: closed-form weight updates (see ``editing.closed_form``).

Usage::

    from diffloc.editing.closed_form import least_squares_update, rank_one_update
"""
