"""Where runs run: one module per executor behind one interface (base.py)."""
