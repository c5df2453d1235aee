from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("reslock", "0006_login_failures")]

    operations = [
        migrations.AddField(
            model_name="syncstate",
            name="version",
            field=models.PositiveBigIntegerField(default=0),
        ),
    ]
