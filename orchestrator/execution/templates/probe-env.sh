env -0
