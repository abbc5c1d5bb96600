WHO = "alpha helper"
